"""Visual entailment offline default: groundability from what is known without pixels (entity
type, text and post context through MiniLM sentence embeddings, logistic regression trained on
Twitter-GMNER labels), combined with the bundled person detector at serving time."""

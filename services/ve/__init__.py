"""Visual entailment stage: is each entity's referring expression visible in the image?"""

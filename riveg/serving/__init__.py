"""The serving layer, above the core: the backend contract, the model store and manager, the
generic stage server, servicer base and client, and the stage registry that resolves them."""

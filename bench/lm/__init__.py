"""Language model (Brown, the protocol GPT): attribution quality and cost on the lm-protocol ground truth."""

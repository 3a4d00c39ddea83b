"""Fine-tuned Hugging Face model (brown-ft): quality and cost on the ft-protocol ground truth."""

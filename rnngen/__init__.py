"""rnngen: recurrent-neural-network language models on the CPU."""

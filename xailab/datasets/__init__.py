"""Offline datasets of the course: MNIST (and Decoy MNIST), concept images, review text, photos."""

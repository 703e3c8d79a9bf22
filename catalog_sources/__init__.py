"""Where catalog products come from: Fashion-MNIST (the demo and evaluation catalog), or a CSV listing a folder
of images. Neither the gateway nor the ranker imports this package."""

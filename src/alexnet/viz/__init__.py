"""Pictures of runs and networks, as PNG files a person opens (matplotlib, Agg, no display needed).

curves.py       loss and top-1/top-5 error against epoch, learning-rate drops marked, runs overlaid
filters.py      the conv1 kernels as colour tiles, one tower above the other (paper Figure 3)
predictions.py  images with their top-5 classes as bars, the true class marked (paper Figure 4, left)
neighbors.py    val images and the training images nearest in fc7 space (paper Figure 4, right)
scoremap.py     images with the fully-convolutional network's probability of their class at each position
figure.py       a figure of an exact pixel size, written atomically
"""

"""Dense features on a camera (chapter 3, notebooks `3x_jetson.*`): heatmaps, PCA, KMeans, matching, camera pipelines, plots and widgets. Imports `models` and `deploy`."""

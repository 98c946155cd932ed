"""Models and content in object storage: the model registry, checkpoint folders (j4r's loaders
with the pipeline's errors), clean training photos."""

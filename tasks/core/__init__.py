"""The shared ground every step stands on: the one settings object, the one exception
hierarchy, the strict config base, the object store (file:// or S3), content-addressed step
artifacts with their manifests, the code version that keys them, and the model folders
(Hugging Face or ONNX) that every step reads and writes. Imports nothing else from `tasks`."""

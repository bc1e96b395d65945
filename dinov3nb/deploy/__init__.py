"""Deployment (notebooks `06_deploy.export`, `08_deploy.runtime`): ONNX export and the torch / ONNX Runtime / TensorRT runtimes. Imports `models` only."""

"""One deployment chain behind every entry point (``vitopt export``, recipe ``export`` steps,
``vitopt bench MODEL``, the methods' exporters, ``benchmarks/``)::

    method export form -> export -> graph rules -> precision -> parity vs PyTorch -> metadata -> write

Modules: ``options`` (DeployOptions), ``precision`` (registry of precisions), ``inputs`` (parity
images), ``chain`` (the steps and ``deploy_model``).

    from optimizer.deploy import DeployOptions, deploy_model, parity_inputs, write_onnx
    result = deploy_model(model, DeployOptions(precision="fp16"), parity_inputs(model, "val/", 8))
    write_onnx(result, "model.onnx")
"""
from .chain import (DeployResult, deploy_model, deploy_models, export_form, export_step, metadata_step,
                    parity_step, precision_step, rules_step, write_onnx)
from .inputs import ParityInputs, parity_inputs
from .options import EXPORTERS, DeployOptions
from .precision import Precision, get_precision, precision_names, register_precision

__all__ = ["DeployOptions", "DeployResult", "deploy_model", "deploy_models", "write_onnx", "parity_inputs",
           "ParityInputs", "export_form", "export_step", "rules_step", "precision_step", "parity_step",
           "metadata_step", "Precision", "register_precision", "get_precision", "precision_names", "EXPORTERS"]

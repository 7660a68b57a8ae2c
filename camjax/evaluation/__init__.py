"""Evaluation: the accuracy definition, mode=eval, CAM localization, FGSM
robustness and loss landscapes."""

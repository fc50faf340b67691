"""Real models that call dcnbench's operators, built from configurations with random weights
(nothing downloaded), run with each backend's kernel swapped in: `deformable_detr` (multi-scale
deformable attention in transformers' DeformableDetrModel)."""

"""The networks and their checkpoints: the registry of backbones (`architectures`, `efficientnet_lite`), the card
(`model_card`, `card_markdown`) and what its figures say about reading the source rather than the disease (`trust`),
model folders loaded without unpickling (`checkpoint`), the calibrated classifier and ensemble (`inference`), the
lung and infection segmenters (`segmentation`), the out-of-distribution guard (`ood`), and finding model folders: a
weights folder's models and the models a card pins (`discovery`)."""

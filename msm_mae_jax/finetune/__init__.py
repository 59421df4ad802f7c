"""Fine-tuning a pre-trained encoder on a labelled task (the MSM-MAE family's recipe).

Modules: `augment` (mixup, SpecAugment, random resized crop), `data` (clips as log-mels,
training and evaluation batches), `model` (clip features + linear head), `optimizer` (AdamW
with layer-wise lr decay), `state` (state, shardings, jitted step), `loop` (one fold x seed),
`export` (the fine-tuned model on disk), `results` (evaluate.py-shaped results), `run`
(`finetune`: every fold and seed of a task).
"""

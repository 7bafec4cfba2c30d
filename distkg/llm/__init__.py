"""The LLM teacher: a (4-bit, LoRA-finetuned) causal LM that encodes entity, relation and time
text and yields predictive distributions over entities (docs/METHOD.md)."""

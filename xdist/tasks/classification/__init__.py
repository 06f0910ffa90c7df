"""The cross-lingual classification family (XNLI, PAWS-X, XCOPA): readers, features, heads, metrics."""

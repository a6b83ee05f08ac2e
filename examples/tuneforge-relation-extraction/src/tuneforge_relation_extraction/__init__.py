"""Relation extraction as a tuneforge task plugin living in its own package."""

from tuneforge_relation_extraction.plugin import RelationExtractionTask, relation_micro_f1

__all__ = ["RelationExtractionTask", "relation_micro_f1"]
__version__ = "0.1.0"

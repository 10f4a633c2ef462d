"""The AGD trainer."""

"""TIDL's facts in one place: the import rules and tables every check reads."""

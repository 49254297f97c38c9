"""The SGSD recipe for verl 0.9.1: thin glue around the ``sgsd`` library."""

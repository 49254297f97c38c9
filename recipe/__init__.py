"""verl recipes shipped by this project (``recipe.sgsd``)."""

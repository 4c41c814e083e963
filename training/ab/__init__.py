"""A/B analysis of served traffic: read the inputs, compute the statistics, render the report."""

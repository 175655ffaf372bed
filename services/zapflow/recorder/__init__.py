"""`zapflow recorder`: keeps the relational store current from the bus."""

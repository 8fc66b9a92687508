"""Training: config sections now; the loop, optimizer, schedule and checkpoints later."""

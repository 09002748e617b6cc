"""Admission: purchases coalesced into one pipelined script call per item per round
trip (batcher), and the gates that answer sold out / ended / not started locally."""

"""`labctl probe`: tokens/s, time to first token, load and memory, measured inside the VM.

agent.py runs in the guest (stdlib only), run.py drives it over SSH, parse.py is pure.
"""

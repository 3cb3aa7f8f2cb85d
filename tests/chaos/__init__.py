"""The resilience suite: the real `qryptify` CLI as a subprocess, under injected faults."""

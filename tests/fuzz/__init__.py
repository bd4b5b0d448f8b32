"""Fuzzing: what the gate must do with any bytes (:mod:`tests.fuzz.harness`),
shared by the hypothesis properties (``tests/gate/test_fuzz_gate.py``,
``tests/protocol/test_fuzz_codec.py``) and the atheris target
(:mod:`tests.fuzz.gate_target`, run by ``tools/fuzz.sh``)."""

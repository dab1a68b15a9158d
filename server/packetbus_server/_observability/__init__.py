"""What an operator sees of a running server: Prometheus metrics (`metrics`),
OpenTelemetry traces (`tracing`) and structured logs (`logs`).

README "Operations" lists every metric and log field; DESIGN.md's bounded-memory
rule holds for labels: none carries a tracking id, a topic or another value a
client chooses freely.
"""

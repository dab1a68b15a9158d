"""Generated protobuf and gRPC stubs for packetbus.v1 (do not edit)."""

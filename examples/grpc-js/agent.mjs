// A packetbus agent written straight against the protos with @grpc/grpc-js and
// @grpc/proto-loader, no packetbus client library (README "Calling packetbus from
// any gRPC client"). Run from a clone, with a server running:
//
//   cd examples/grpc-js && npm ci && node agent.mjs my-topic
//
// It talks to $PACKETBUS_TARGET (default 127.0.0.1:50051) and prints one JSON line
// per step.
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const topic = process.argv[2];
if (!topic) {
  console.error("usage: node agent.mjs TOPIC");
  process.exit(2);
}
const target = process.env.PACKETBUS_TARGET || "127.0.0.1:50051";

// The include root is the repository's protos/ (google/rpc is vendored there);
// the google/protobuf well-known types come with protobufjs.
const PROTOS = fileURLToPath(new URL("../../protos", import.meta.url));
const FILES = ["packetbus/v1/packet_service.proto", "google/rpc/error_details.proto"];

// keepCase: fields by their proto names (tracking_id), as error field paths name them.
const definition = protoLoader.loadSync(FILES, {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: String,
  enums: String,
  oneofs: true,
});
const { PacketService } = grpc.loadPackageDefinition(definition).packetbus.v1;
const bus = new PacketService(target, grpc.credentials.createInsecure(), {
  // Replies go up to limits.max_response_bytes (16 MiB); grpc-js accepts 4 MiB by default.
  "grpc.max_receive_message_length": 16 * 1024 * 1024,
  // Keep idle streams' connection open, no more often than
  // limits.keepalive.min_client_ping_interval_ms (10 s) allows.
  "grpc.keepalive_time_ms": 30_000,
});

// Error details are google.protobuf.Any bytes: proto-loader gives no decoder for a
// message by name, so they are decoded with protobufjs from the same files.
const details = new protobuf.Root();
details.resolvePath = (_origin, file) => `${PROTOS}/${file}`;
details.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });

function unpack(any) {
  const type = details.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
  return { "@type": any.type_url, ...type.toObject(type.decode(any.value)) };
}

// A google.rpc.Status (a per-packet result's, or a whole call's) as plain JSON.
function status({ code, message, details: anys }) {
  return { code: grpc.status[code], message, details: (anys || []).map(unpack) };
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 10_000;
    bus[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

const print = (line) => console.log(JSON.stringify(line));

// 1. What the server is and accepts.
const info = await call("GetServerInfo", {});
print({
  step: "server_info",
  version: info.version,
  supported_schema_versions: info.supported_schema_versions,
  max_response_bytes: info.limits.max_response_bytes,
});

// 2. One valid packet. `data` is a google.protobuf.Struct: protobufjs's bundled
// well-known types keep their JSON names even with keepCase, so a Value is
// {numberValue: 3}, never {number_value: 3}.
const packet = {
  tracking_id: randomUUID(), // the idempotency key: keep it when sending again
  origin: "grpc-js-agent",
  schema_version: "1.0",
  speech_act: "SPEECH_ACT_INFORM",
  topic,
  data: { fields: { pages: { numberValue: 3 }, title: { stringValue: "Q3 report" } } },
};
const [stored] = (await call("Dispatch", { packets: [packet] })).results;
print({ step: "dispatch", tracking_id: stored.tracking_id, receipt: stored.receipt });

// 3. One invalid packet: the Value given by its proto name, which protobufjs drops.
// A packet's own error is in its result (DispatchResult.error), not the call's.
const invalid = { ...packet, tracking_id: randomUUID(), data: { fields: { pages: { number_value: 3 } } } };
const [refused] = (await call("Dispatch", { packets: [invalid] })).results;
const error = status(refused.error);
print({
  step: "invalid_packet",
  outcome: refused.outcome,
  code: error.code,
  field_violations: error.details.flatMap((detail) => detail.field_violations || []),
});

// 4. A whole-call error: no packets at all. Its google.rpc.Status travels in the
// grpc-status-details-bin trailer.
try {
  await call("Dispatch", { packets: [] });
  throw new Error("an empty Dispatch was accepted");
} catch (err) {
  const [bytes] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (!bytes) throw err;
  const Status = details.lookupType("google.rpc.Status");
  print({ step: "empty_dispatch", ...status(Status.toObject(Status.decode(bytes))) });
}

// 5. Subscribe from the topic's oldest packet and print the one dispatched above.
const received = await new Promise((resolve, reject) => {
  const stream = bus.Subscribe(
    { topic, start_position: "START_POSITION_EARLIEST" },
    { deadline: Date.now() + 10_000 },
  );
  stream.on("data", ({ packets }) => {
    const mine = packets.find((p) => p.packet.tracking_id === packet.tracking_id);
    if (mine) {
      resolve(mine);
      stream.cancel();
    }
  });
  stream.on("error", (err) => err.code !== grpc.status.CANCELLED && reject(err));
});
print({
  step: "subscribe",
  tracking_id: received.packet.tracking_id,
  cursor: received.receipt.cursor,
  data: received.packet.data,
});
bus.close();

// Consumer groups with kafkajs at its default settings, driven by the Rust end-to-end
// tests (tests/tests/groups.rs). Every command prints one JSON document on stdout.
//
//   groups.js produce BOOTSTRAP TOPIC COUNT TAG
//       Sends COUNT records (key "k<i>", value "<TAG>-<i>"); prints {"sent": COUNT}.
//   groups.js share BOOTSTRAP TOPIC GROUP EXPECTED
//       Two consumers of GROUP started together read until they have EXPECTED records
//       between them (then a little longer, to catch duplicates) and disconnect,
//       committing. Prints {"consumers": [{"assignment": [...], "values": [...]}, ...]}.
//   groups.js consume BOOTSTRAP TOPIC GROUP EXPECTED
//       One consumer of GROUP reads EXPECTED records (then a little longer); prints
//       {"values": [...]}.
//   groups.js committed BOOTSTRAP TOPIC GROUP PARTITIONS
//       Prints {"committed": [offset or null per partition]} (the admin client's view).

const { Kafka, logLevel } = require("kafkajs");

const DEADLINE_MS = 90000;
const LINGER_MS = 2000;

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

// kafkajs logs to stdout by default; stdout carries the JSON answer, so logs go to stderr.
const toStderr = () => ({ namespace, level, log }) => {
  process.stderr.write(`${namespace} ${level} ${JSON.stringify(log)}\n`);
};

function client(bootstrap) {
  return new Kafka({
    clientId: "ringlog-e2e",
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator: toStderr,
  });
}

async function produce(bootstrap, topic, count, tag) {
  const producer = client(bootstrap).producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) messages.push({ key: `k${i}`, value: `${tag}-${i}` });
  await producer.send({ topic, messages });
  await producer.disconnect();
  return { sent: count };
}

async function consumeWith(bootstrap, topic, group, members, expected) {
  const kafka = client(bootstrap);
  const states = [];
  for (let i = 0; i < members; i++) {
    const consumer = kafka.consumer({ groupId: group });
    const state = { consumer, assignment: [], values: [] };
    consumer.on(consumer.events.GROUP_JOIN, (event) => {
      state.assignment = (event.payload.memberAssignment[topic] || []).slice().sort();
    });
    states.push(state);
  }
  await Promise.all(
    states.map(async (state) => {
      await state.consumer.connect();
      await state.consumer.subscribe({ topic, fromBeginning: true });
      await state.consumer.run({
        eachMessage: async ({ message }) => {
          state.values.push(message.value.toString());
        },
      });
    })
  );
  const deadline = Date.now() + DEADLINE_MS;
  const total = () => states.reduce((sum, s) => sum + s.values.length, 0);
  while (total() < expected) {
    if (Date.now() > deadline) fail(`kafkajs: timed out with ${total()} of ${expected}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await new Promise((resolve) => setTimeout(resolve, LINGER_MS));
  await Promise.all(states.map((s) => s.consumer.disconnect()));
  return states.map((s) => ({ assignment: s.assignment, values: s.values }));
}

async function committed(bootstrap, topic, group, partitions) {
  const admin = client(bootstrap).admin();
  await admin.connect();
  const [found] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
  await admin.disconnect();
  const offsets = new Array(partitions).fill(null);
  for (const { partition, offset } of found.partitions) {
    if (Number(offset) >= 0) offsets[partition] = Number(offset);
  }
  return { committed: offsets };
}

async function main() {
  const [command, bootstrap, topic, ...rest] = process.argv.slice(2);
  let result;
  if (command === "produce") {
    result = await produce(bootstrap, topic, Number(rest[0]), rest[1]);
  } else if (command === "share") {
    result = { consumers: await consumeWith(bootstrap, topic, rest[0], 2, Number(rest[1])) };
  } else if (command === "consume") {
    const [only] = await consumeWith(bootstrap, topic, rest[0], 1, Number(rest[1]));
    result = { values: only.values };
  } else if (command === "committed") {
    result = await committed(bootstrap, topic, rest[0], Number(rest[1]));
  } else {
    fail(`unknown command ${command}`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error) => fail(`kafkajs: ${error.stack || error}`));

// KafkaJS transactions: a transactional producer commits one transaction and aborts
// another; a consume-transform-produce step commits a consumer group's offsets in the
// transaction (sendOffsets); a read_committed consumer (KafkaJS's default
// readUncommitted: false) sees only the committed records, one with
// readUncommitted: true sees all.
// env: HERALD_BOOTSTRAP, TOPIC, OUT, GROUP
'use strict'

const { env, kafka, run } = require('./common')

async function readAll(client, topic, readUncommitted, expect) {
  const consumer = client.consumer({ groupId: `check-${Date.now()}-${Math.random()}`, readUncommitted })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const values = []
  await consumer.run({ eachMessage: async ({ message }) => { values.push(message.value.toString()) } })
  const deadline = Date.now() + 20000
  while (values.length < expect && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200))
  }
  await new Promise((r) => setTimeout(r, 1500))
  await consumer.disconnect()
  return values.sort()
}

run(async () => {
  const topic = env('TOPIC')
  const out = env('OUT')
  const group = env('GROUP')
  const client = kafka('herald-kafkajs-txn')
  const admin = client.admin()
  await admin.connect()
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 1 }, { topic: out, numPartitions: 1 }] })
  await admin.disconnect()

  const producer = client.producer({ transactionalId: 'kafkajs-txn', idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const committed = await producer.transaction()
  await committed.send({ topic, messages: [{ key: 'a', value: 'committed-1' }, { key: 'b', value: 'committed-2' }] })
  await committed.commit()
  const aborted = await producer.transaction()
  await aborted.send({ topic, messages: [{ key: 'a', value: 'aborted-1' }] })
  await aborted.abort()

  // Consume-transform-produce: copy the committed records to OUT, committing the
  // group's offset of TOPIC in the same transaction.
  const eos = await producer.transaction()
  await eos.send({ topic: out, messages: [{ value: 'copied-1' }, { value: 'copied-2' }] })
  await eos.sendOffsets({ consumerGroupId: group, topics: [{ topic, partitions: [{ partition: 0, offset: '5' }] }] })
  await eos.commit()
  await producer.disconnect()

  const admin2 = client.admin()
  await admin2.connect()
  const groupOffsets = await admin2.fetchOffsets({ groupId: group, topics: [topic] })
  await admin2.disconnect()

  return {
    committedView: await readAll(client, topic, false, 2),
    uncommittedView: await readAll(client, topic, true, 3),
    outView: await readAll(client, out, false, 2),
    groupOffset: groupOffsets[0].partitions[0].offset,
  }
}, 90000)

// The seed's producer/consumer flow in KafkaJS: send keyed JSON events, then a
// consumer group subscribed fromBeginning collects them all and disconnects.
// env: HERALD_BOOTSTRAP, TOPIC, GROUP, COUNT, and optionally COMPRESSION=gzip
'use strict'

const { CompressionTypes } = require('kafkajs')
const { env, kafka, run } = require('./common')

run(async () => {
  const topic = env('TOPIC')
  const groupId = env('GROUP')
  const count = parseInt(env('COUNT'), 10)
  const client = kafka('herald-kafkajs-seed')

  const producer = client.producer()
  await producer.connect()
  const compression = process.env.COMPRESSION === 'gzip' ? CompressionTypes.GZIP : CompressionTypes.None
  const produced = []
  for (let i = 0; i < count; i++) {
    const event = {
      event_id: `evt_${i}`,
      type: 'OrderPlaced',
      order_id: `ORD${1000 + i}`,
      user_id: `user_${i % 5}`,
      amount: 10 + i / 100,
    }
    const [meta] = await producer.send({
      topic,
      acks: -1,
      compression,
      messages: [{ key: event.user_id, value: JSON.stringify(event), headers: { source: 'kafkajs' } }],
    })
    produced.push({ partition: meta.partition, offset: meta.baseOffset, error: meta.errorCode })
  }
  await producer.disconnect()

  const consumer = client.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000 })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const consumed = []
  let done
  const allReceived = new Promise((resolve) => { done = resolve })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      consumed.push({
        partition,
        offset: message.offset,
        key: message.key ? message.key.toString() : null,
        value: JSON.parse(message.value.toString()),
        headers: Object.fromEntries(Object.entries(message.headers || {}).map(([k, v]) => [k, v.toString()])),
      })
      if (consumed.length >= count) done()
    },
  })
  await allReceived
  // Disconnect outside eachMessage: it waits for the running handler to finish.
  await consumer.disconnect()
  return { produced, consumed }
})

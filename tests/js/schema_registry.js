// @kafkajs/confluent-schema-registry against Herald's registry: register an Avro schema
// (again: the same id), encode records, produce them with KafkaJS to a topic that
// validates schemas on produce, consume and decode them; a plain JSON value is refused.
// env: HERALD_BOOTSTRAP, REGISTRY_URL, TOPIC
'use strict'

const { SchemaRegistry, SchemaType } = require('@kafkajs/confluent-schema-registry')
const { env, kafka, run } = require('./common')

const schema = JSON.stringify({
  type: 'record',
  name: 'OrderPlaced',
  namespace: 'shop',
  fields: [
    { name: 'order_id', type: 'string' },
    { name: 'amount', type: 'double' },
  ],
})

run(async () => {
  const topic = env('TOPIC')
  const registry = new SchemaRegistry({ host: env('REGISTRY_URL') })
  const subject = `${topic}-value`
  const { id } = await registry.register({ type: SchemaType.AVRO, schema }, { subject })
  const again = await registry.register({ type: SchemaType.AVRO, schema }, { subject })
  const latest = await registry.getLatestSchemaId(subject)

  const client = kafka('herald-schema-registry-js')
  const admin = client.admin()
  await admin.connect()
  await admin.createTopics({
    topics: [{ topic, numPartitions: 1, configEntries: [{ name: 'confluent.value.schema.validation', value: 'true' }] }],
  })
  await admin.disconnect()

  const producer = client.producer()
  await producer.connect()
  const orders = [
    { order_id: 'ORD1', amount: 10.5 },
    { order_id: 'ORD2', amount: 20.25 },
  ]
  const encoded = await Promise.all(orders.map((o) => registry.encode(id, o)))
  await producer.send({ topic, acks: -1, messages: encoded.map((value) => ({ value })) })
  let refused = null
  try {
    await producer.send({ topic, acks: -1, messages: [{ value: JSON.stringify(orders[0]) }] })
  } catch (e) {
    refused = e.type || (e.cause && e.cause.type) || e.name
  }
  await producer.disconnect()

  const consumer = client.consumer({ groupId: `${topic}-g` })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const decoded = []
  await new Promise((resolve, reject) => {
    consumer
      .run({
        eachMessage: async ({ message }) => {
          decoded.push(await registry.decode(message.value))
          if (decoded.length === orders.length) resolve()
        },
      })
      .catch(reject)
  })
  await consumer.disconnect()
  return { id, again: again.id, latest, decoded, refused }
})

// KafkaJS admin client: createTopics (with config), listTopics, fetchTopicMetadata,
// fetchTopicOffsets after producing, createTopics on an existing name, deleteTopics.
// env: HERALD_BOOTSTRAP, TOPIC
'use strict'

const { env, kafka, run } = require('./common')

run(async () => {
  const topic = env('TOPIC')
  const client = kafka('herald-kafkajs-admin')
  const admin = client.admin()
  await admin.connect()

  const created = await admin.createTopics({
    waitForLeaders: true,
    topics: [{ topic, numPartitions: 3, replicationFactor: 1, configEntries: [{ name: 'retention.ms', value: '7200000' }] }],
  })
  const listedAfterCreate = await admin.listTopics()
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })

  const producer = client.producer()
  await producer.connect()
  for (let p = 0; p < 3; p++) {
    await producer.send({
      topic,
      acks: -1,
      messages: Array.from({ length: p + 1 }, (_, i) => ({ partition: p, value: `p${p}-m${i}` })),
    })
  }
  await producer.disconnect()
  const offsets = await admin.fetchTopicOffsets(topic)

  const createdAgain = await admin.createTopics({ topics: [{ topic, numPartitions: 3 }] })
  await admin.deleteTopics({ topics: [topic], timeout: 10000 })
  let listedAfterDelete = await admin.listTopics()
  for (let i = 0; i < 50 && listedAfterDelete.includes(topic); i++) {
    await new Promise((r) => setTimeout(r, 200))
    listedAfterDelete = await admin.listTopics()
  }
  await admin.disconnect()

  return {
    created,
    createdAgain,
    listedAfterCreate: listedAfterCreate.includes(topic),
    listedAfterDelete: listedAfterDelete.includes(topic),
    partitions: metadata.topics[0].partitions
      .map((p) => ({ partition: p.partitionId, leader: p.leader, replicas: p.replicas, isr: p.isr }))
      .sort((a, b) => a.partition - b.partition),
    offsets: offsets
      .map((o) => ({ partition: o.partition, low: o.low, high: o.high, offset: o.offset }))
      .sort((a, b) => a.partition - b.partition),
  }
})

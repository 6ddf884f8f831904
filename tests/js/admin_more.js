// KafkaJS against issue 15's admin calls: createPartitions (then produce to a new
// partition and read the metadata back), a too-small count refused, and a group's
// offsets set, fetched and reset over every partition, the new ones included.
// env: HERALD_BOOTSTRAP, TOPIC, GROUP
'use strict'

const { env, kafka, run } = require('./common')

run(async () => {
  const topic = env('TOPIC')
  const groupId = env('GROUP')
  const client = kafka('herald-kafkajs-admin-more')
  const admin = client.admin()
  await admin.connect()
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 2 }] })
  await admin.createPartitions({ topicPartitions: [{ topic, count: 4 }] })
  let refused = null
  try {
    await admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] })
  } catch (e) {
    refused = e.type || (e.errors && e.errors[0] && e.errors[0].type) || e.message
  }
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })

  const producer = client.producer()
  await producer.connect()
  const sent = await producer.send({ topic, acks: -1, messages: [{ partition: 3, value: 'on-new' }] })
  await producer.disconnect()

  await admin.setOffsets({ groupId, topic, partitions: [{ partition: 3, offset: '1' }, { partition: 0, offset: '0' }] })
  const fetched = await admin.fetchOffsets({ groupId, topics: [topic] })
  await admin.resetOffsets({ groupId, topic, earliest: true })
  const reset = await admin.fetchOffsets({ groupId, topics: [topic] })
  await admin.disconnect()

  const offsetsOf = (result) => result[0].partitions
    .map((p) => ({ partition: p.partition, offset: p.offset }))
    .sort((a, b) => a.partition - b.partition)
  return {
    partitions: metadata.topics[0].partitions.map((p) => p.partitionId).sort(),
    refused,
    sent: sent.map((s) => ({ partition: s.partition, error: s.errorCode, offset: s.baseOffset })),
    fetched: offsetsOf(fetched),
    reset: offsetsOf(reset),
  }
})

// One KafkaJS consumer-group member for test_dead_member.py, run as its own process so
// the test can make it die without a LeaveGroup: SIGKILL, SIGSTOP, or a line "exit" on
// stdin, which calls process.exit(0) at once (no disconnect, so no LeaveGroup).
// SIGTERM disconnects (LeaveGroup) and exits 0.
// env: HERALD_BOOTSTRAP, TOPIC, GROUP, NAME (the client id), SESSION_TIMEOUT_MS,
//      REBALANCE_TIMEOUT_MS, and optionally DEADLINE_MS (default 120000)
//
// Prints one JSON object per line on stdout:
//   {"ev":"joined","memberId":M,"partitions":[...]}  after every join + sync
//   {"ev":"msg","p":P,"o":"OFFSET","v":VALUE}          once the record's offset is committed
//   {"ev":"crash","error":"..."}
//   {"ev":"closed"}                                    after a clean disconnect (SIGTERM)
// Offsets are committed one record at a time, before the record is reported.
'use strict'

const readline = require('readline')
const { env, kafka } = require('./common')

const topic = env('TOPIC')
const groupId = env('GROUP')
const deadlineMs = parseInt(process.env.DEADLINE_MS || '120000', 10)

function emit(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n')
}

const consumer = kafka(env('NAME')).consumer({
  groupId,
  sessionTimeout: parseInt(env('SESSION_TIMEOUT_MS'), 10),
  rebalanceTimeout: parseInt(env('REBALANCE_TIMEOUT_MS'), 10),
  heartbeatInterval: 1000,
  maxWaitTimeInMs: 500,
})

consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
  emit({ ev: 'joined', memberId: payload.memberId, partitions: [...(payload.memberAssignment[topic] || [])].sort((a, b) => a - b) })
})
consumer.on(consumer.events.CRASH, ({ payload }) => {
  emit({ ev: 'crash', error: String(payload.error && payload.error.stack ? payload.error.stack : payload.error) })
})

setTimeout(() => {
  console.error(`dead_member.js: deadline of ${deadlineMs} ms reached`)
  process.exit(2)
}, deadlineMs).unref()

// Exit at once, without consumer.disconnect(): the broker hears nothing (no LeaveGroup)
// but sees the connection close.
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'exit') process.exit(0)
})

process.on('SIGTERM', () => {
  consumer
    .disconnect()
    .then(() => {
      emit({ ev: 'closed' })
      process.exit(0)
    })
    .catch((err) => {
      console.error(err && err.stack ? err.stack : err)
      process.exit(1)
    })
})

async function main() {
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      const next = (BigInt(message.offset) + 1n).toString()
      await consumer.commitOffsets([{ topic, partition, offset: next }])
      emit({ ev: 'msg', p: partition, o: message.offset, v: message.value.toString() })
    },
  })
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err)
  process.exit(1)
})

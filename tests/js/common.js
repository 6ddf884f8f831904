// Shared setup for the KafkaJS scripts that tests/python/test_kafkajs.py runs.
// Each script prints exactly one JSON line on stdout (its result) and exits 0,
// or prints the error on stderr and exits 1. Every script has a hard deadline.
'use strict'

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, logLevel } = require('kafkajs')

function env(name) {
  const value = process.env[name]
  if (!value) {
    throw new Error(`environment variable ${name} is required`)
  }
  return value
}

function kafka(clientId) {
  return new Kafka({
    clientId,
    brokers: [env('HERALD_BOOTSTRAP')],
    logLevel: logLevel.WARN,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 5 },
  })
}

// Runs `main` with a deadline; prints its result as JSON.
function run(main, deadlineMs = 60000) {
  const timer = setTimeout(() => {
    console.error(`timed out after ${deadlineMs} ms`)
    process.exit(1)
  }, deadlineMs)
  main()
    .then((result) => {
      clearTimeout(timer)
      process.stdout.write(JSON.stringify(result) + '\n')
      process.exit(0)
    })
    .catch((err) => {
      clearTimeout(timer)
      console.error(err && err.stack ? err.stack : err)
      process.exit(1)
    })
}

module.exports = { env, kafka, run }

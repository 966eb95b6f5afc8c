<?php
// Usage: job_consumer.php HOST PORT ENV QUEUE EXPECTED DEADLINE_S
// A PHP worker loop on ENV_QUEUE: reliable reads (get <q>/close/open/t=500), each body
// JSON-decoded here, the job name taken from job_name (kestrelpy's producers) or jobName
// (PHP's). Prints one JSON line per job ({"event": "job", "job_name", "instance", "data",
// "attempts"}), {"event": "invalid", "body"} for an item that is not a job (confirmed by the
// next read and skipped, as PHP workers did), and after EXPECTED items confirms the last one
// with get <q>/close and prints {"event": "exit", "jobs": N}. Exits 2 at DEADLINE_S.

declare(strict_types=1);
require __DIR__ . '/job_client.php';

[$host, $port, $env, $queue, $expected, $deadlineS] =
    array_slice($argv, 1) + [null, null, null, null, null, null];
if ($deadlineS === null) {
    kp_fail('usage: job_consumer.php HOST PORT ENV QUEUE EXPECTED DEADLINE_S');
}
$source = kp_job_queue($env, $queue);
$client = new KpJobClient($host, (int)$port);
$deadline = microtime(true) + (float)$deadlineS;
$jobs = 0;
$items = 0;

while ($items < (int)$expected) {
    if (microtime(true) > $deadline) {
        kp_emit(['event' => 'deadline', 'jobs' => $jobs]);
        exit(2);
    }
    $body = $client->next($source, 500);
    if ($body === null) {
        continue;  // nothing within 500 ms: ask again
    }
    $items++;
    $job = json_decode($body, true);
    $name = is_array($job) ? ($job['job_name'] ?? $job['jobName'] ?? null) : null;
    if (!is_string($name)) {
        kp_emit(['event' => 'invalid', 'body' => substr($body, 0, 200)]);
        continue;
    }
    kp_emit([
        'event' => 'job',
        'job_name' => $name,
        'instance' => $job['instance'] ?? null,
        'data' => $job['data'] ?? null,
        'attempts' => $job['attempts'] ?? 0,
    ]);
    $jobs++;
}
$client->close($source);
kp_emit(['event' => 'exit', 'jobs' => $jobs]);

<?php
// Usage: consumer.php HOST PORT QUEUE EXPECTED DEADLINE_S [DIE_AFTER]
// Reliable-read loop: get QUEUE/close/open/t=1000 confirms the previous job and opens the
// next. A job with data.fail_once fails on its first delivery: the consumer aborts it
// (get QUEUE/abort) and meets it again on a later read. After EXPECTED jobs are done, a final
// get QUEUE/close confirms the last one. Prints one JSON line per event.
// With DIE_AFTER=n the process exits (code 3) right after receiving its n-th job, holding it
// open without close or abort, as a crashed worker would.

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port, $queue, $expected, $deadlineS, $dieAfter] =
    array_slice($argv, 1) + [null, null, null, null, null, '0'];
if ($deadlineS === null) {
    kp_fail('usage: consumer.php HOST PORT QUEUE EXPECTED DEADLINE_S [DIE_AFTER]');
}
$m = kp_connect($host, (int)$port);
$deadline = microtime(true) + (float)$deadlineS;
$aborted = [];
$done = 0;
$received = 0;
$empties = 0;

while ($done < (int)$expected) {
    if (microtime(true) > $deadline) {
        kp_emit(['event' => 'deadline', 'done' => $done]);
        exit(2);
    }
    $started = microtime(true);
    $raw = kp_get($m, $queue . '/close/open/t=1000');
    if ($raw === false) {
        $empties++;
        kp_emit(['event' => 'empty', 'ms' => (int)round((microtime(true) - $started) * 1000)]);
        if ($empties >= 30) {  // a server that ignores t= would spin here
            exit(4);
        }
        continue;
    }
    $received++;
    $job = json_decode($raw, true);
    if (!is_array($job) || !isset($job['id'], $job['jobName'], $job['data'])) {
        kp_fail('not a job: ' . substr((string)$raw, 0, 200));
    }
    $id = $job['id'];
    if ((int)$dieAfter > 0 && $received === (int)$dieAfter) {
        kp_emit(['event' => 'die', 'id' => $id]);
        exit(3);
    }
    if ($job['data']['fail_once'] && !isset($aborted[$id])) {
        $aborted[$id] = true;
        kp_emit(['event' => 'abort', 'id' => $id]);
        kp_get($m, $queue . '/abort');
        continue;
    }
    $padOk = strlen($job['data']['pad']) === $job['data']['pad_len'];
    kp_emit(['event' => 'done', 'id' => $id, 'pad_ok' => $padOk]);
    $done++;
}
kp_get($m, $queue . '/close');
kp_emit(['event' => 'exit', 'done' => $done]);

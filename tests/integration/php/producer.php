<?php
// Usage: producer.php HOST PORT QUEUE COUNT FAIL_ONCE_IDS(comma separated, may be empty)
// Enqueues COUNT JSON jobs {id, jobName, data}; some carry a large pad, which the memcached
// extension would compress if compression were on.

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port, $queue, $count, $failIds] = array_slice($argv, 1) + [null, null, null, null, ''];
if ($count === null) {
    kp_fail('usage: producer.php HOST PORT QUEUE COUNT FAIL_ONCE_IDS');
}
$failOnce = array_flip(array_filter(explode(',', (string)$failIds), 'strlen'));
$m = kp_connect($host, (int)$port);

for ($i = 0; $i < (int)$count; $i++) {
    $pad = ($i % 10 === 0) ? str_repeat('x', 5000) : '';
    $job = [
        'id' => $i,
        'jobName' => 'Resize',
        'data' => [
            'fail_once' => isset($failOnce[(string)$i]),
            'pad' => $pad,
            'pad_len' => strlen($pad),
        ],
    ];
    if (!$m->set($queue, json_encode($job))) {
        kp_fail("set job $i failed: " . $m->getResultCode() . ' ' . $m->getResultMessage());
    }
}
kp_emit(['event' => 'produced', 'count' => (int)$count]);

<?php
// Usage: roundtrip.php HOST PORT QUEUE
// With the extension's defaults (compression on, PHP serializer) the type and compression
// markers live in the memcache flags; they survive only if the server preserves flags.

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port, $queue] = array_slice($argv, 1) + [null, null, null];
if ($queue === null) {
    kp_fail('usage: roundtrip.php HOST PORT QUEUE');
}
$m = kp_connect($host, (int)$port, true);
$big = str_repeat('compress me ', 2000);
$array = ['jobName' => 'Resize', 'ids' => [1, 2, 3]];
foreach ([$big, $array, 42] as $value) {
    if (!$m->set($queue, $value)) {
        kp_fail('set failed: ' . $m->getResultMessage());
    }
}
kp_emit([
    'big_ok' => kp_get($m, $queue) === $big,
    'array_ok' => kp_get($m, $queue) === $array,
    'int_ok' => kp_get($m, $queue) === 42,
    'empty_ok' => kp_get($m, $queue . '/t=10') === false,
]);

<?php
// Usage: job_producer.php HOST PORT ENV QUEUE COUNT [COMPRESSED_AT]
// Puts COUNT job envelopes {instance, jobName[, data]} on ENV_QUEUE with compression off,
// one JSON line per job on stdout ({"event": "put", "job": ..., "compressed": false}), then
// {"event": "produced", "count": COUNT}. The job numbered COMPRESSED_AT (if given) carries
// a large body and is sent through a second connection with the extension's compression
// on, as a producer left at the extension's defaults would send it.

declare(strict_types=1);
require __DIR__ . '/job_client.php';

[$host, $port, $env, $queue, $count, $compressedAt] =
    array_slice($argv, 1) + [null, null, null, null, null, '-1'];
if ($count === null) {
    kp_fail('usage: job_producer.php HOST PORT ENV QUEUE COUNT [COMPRESSED_AT]');
}
$target = kp_job_queue($env, $queue);
$plain = new KpJobClient($host, (int)$port);
$compressing = null;

// Job $i, varied the ways real jobs vary: nested data, non-ASCII text, a body large enough
// that the extension would have compressed it, and no data at all.
function job_number(int $i): array
{
    switch ($i % 4) {
        case 0:
            return kp_envelope('Resize', 'tenant-a', [
                'id' => $i, 'size' => [640, 480], 'name' => "photo-\u{e9}t\u{e9}-$i.jpg",
            ]);
        case 1:
            return kp_envelope('Report', 'tenant-b', ['id' => $i, 'pad' => str_repeat('r', 3000)]);
        case 2:
            return kp_envelope('Email', 'tenant-a', [
                'id' => $i, 'to' => ['a@example.com', 'b@example.com'], 'ratio' => 0.25,
            ]);
        default:
            return kp_envelope('Ping', "tenant-$i");
    }
}

for ($i = 0; $i < (int)$count; $i++) {
    if ($i === (int)$compressedAt) {
        $compressing ??= new KpJobClient($host, (int)$port, true);
        $job = kp_envelope('Archive', 'tenant-z', ['id' => $i, 'pad' => str_repeat('z ', 4000)]);
        $body = $compressing->put($target, $job);
        kp_emit(['event' => 'put', 'job' => $job, 'compressed' => true, 'body' => $body]);
        continue;
    }
    $job = job_number($i);
    $plain->put($target, $job);
    kp_emit(['event' => 'put', 'job' => $job, 'compressed' => false]);
}
kp_emit(['event' => 'produced', 'count' => (int)$count]);

/**
 * The attempt budget's backoff (workflows/attempts.ts), unit level: what a failed attempt costs in
 * waiting before the next one. The budgets themselves run end to end in budgets.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AttemptBudget } from '../workflows/attempts';

const T = { maxAttempts: 5, maxInterruptions: null };

describe('attempt backoff', () => {
  test('an interruption after progress retries at once; without progress it backs off and doubles', () => {
    const b = new AttemptBudget(T);
    assert.equal(b.charge('interruption', true, 'worker lost', 0), 0);
    assert.deepEqual([1, 2, 3].map((i) => b.charge('interruption', false, 'worker lost', i)), [1000, 2000, 4000]);
    assert.equal(b.charge('interruption', true, 'worker lost', 4), 0, 'progress: at once again');
    assert.equal(b.charge('interruption', false, 'worker lost', 5), 1000, 'and the doubling starts over');
    assert.equal(b.interruptions, 6);
  });

  test('a trainer failure always waits, 1 s after progress', () => {
    const b = new AttemptBudget(T);
    assert.deepEqual([0, 1].map((i) => b.charge('trainer', false, 'exit 1', i)), [1000, 2000]);
    assert.equal(b.charge('trainer', true, 'exit 1', 2), 1000);
    assert.equal(b.failuresSinceProgress, 1);
  });
});

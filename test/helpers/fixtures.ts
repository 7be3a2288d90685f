/**
 * Config text the suites share: the example trainer's params and the model blocks several test files
 * put under `models:` (helpers/kiln.ts `defaultConfigYaml` assembles them into a temporal.yaml).
 * Plain strings, indented for their place in the YAML; a block only one file uses stays in that file.
 */

/** The example trainer's params (examples/trainer/train.mjs), with the fault params tests need; goes after `params:`. */
export const EXAMPLE_TRAINER_PARAMS = `
      epochs: { type: integer, min: 1, max: 10000, default: 2 }
      steps_per_epoch: { type: integer, min: 1, max: 100000, default: 10 }
      batch_size: { type: integer, min: 1, max: 4096, default: 32 }
      lr: { type: number, gt: 0, max: 10, default: 0.3 }
      hidden: { type: integer, min: 1, max: 1024, default: 16 }
      seed: { type: integer, min: 0, default: 1 }
      step_delay_ms: { type: integer, min: 0, max: 60000, default: 0 }
      checkpoint_every: { type: integer, min: 1 }
      checkpoint_write_ms: { type: integer, min: 0, max: 60000 }
      samples: { type: integer, min: 50, max: 100000 }
      dataset: { type: enum, values: [spirals, blobs], default: spirals }
      fault: { type: enum, values: [crash, hang, exit2, garbage, truncate, poison] }
      fault_at_step: { type: integer, min: 0 }
      fault_attempts: { type: array, items: integer }`;

/** `spirals`: the example trainer, 2 epochs × 10 steps on the gpu pool; no metrics required, no promotion. */
export const SPIRALS_MODEL = `  spirals:
    trainer: example
    dataset: synthetic://spirals/v1
    params: { epochs: 2, steps_per_epoch: 10 }
    pool: gpu
    gpus: 1`;

/** Appended to a model block: requires val_loss and accuracy from evaluate. */
export const REQUIRED_METRICS = `
    requiredMetrics: [val_loss, accuracy]`;

/** `spirals` evaluated and auto-promoted on val_loss: the model most suites train (defaultConfigYaml's default). */
export const PROMOTED_SPIRALS_MODEL = `${SPIRALS_MODEL}${REQUIRED_METRICS}
    promotion: { metric: val_loss, direction: min, mode: auto }`;

/** `blobs`: a second example-trainer model on the other dataset, 1 epoch × 5 steps. */
export const BLOBS_MODEL = `  blobs:
    trainer: example
    dataset: synthetic://blobs/v1
    params: { dataset: blobs, epochs: 1, steps_per_epoch: 5 }
    pool: gpu
    gpus: 1`;

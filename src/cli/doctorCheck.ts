/** One line of `kiln doctor`: shared by the doctor verb and the checks it runs from other files. */
export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface Check {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  /** What to do about a failure or warning. */
  hint?: string;
}

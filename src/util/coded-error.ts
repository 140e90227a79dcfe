/**
 * The shape every module's typed error shares (in the manner of panva/jose): callers branch on a stable `code`,
 * humans read `message`. Each module keeps its own subclass, so `instanceof` tells the modules apart.
 */
export abstract class CodedError<Code> extends Error {
  readonly code: Code;

  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * The question "Scale Lepton Cluster…" asks: a worker count, in a number input
 * whose `min`, `max` and `step` come from the served schema of a scale request.
 * Above it, one line says why the number cannot be sent: the served bounds'
 * reason as it is typed (JupyterLab's dialog disables OK for an out-of-range
 * input), or the server's last refusal.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { ICountBounds, IScaleAnswer, inputBounds, outOfBounds } from './form';

/** The dialog's body: the refusal, if any, and the number as typed (NaN when empty). */
class WorkersBody extends Widget implements Dialog.IBodyWidget<number> {
  constructor(
    value: number,
    refusal: string | undefined,
    bounds: ICountBounds | null
  ) {
    super();
    this.addClass('jp-Input-Dialog');
    const label = document.createElement('label');
    label.className = 'lepton-Error';
    label.textContent = refusal ?? '';
    label.hidden = !refusal;
    this.node.appendChild(label);
    this._input = document.createElement('input');
    this._input.className = 'jp-mod-styled';
    this._input.type = 'number';
    const { min, max, step } = inputBounds(bounds);
    if (min !== undefined) {
      this._input.min = String(min);
    }
    if (max !== undefined) {
      this._input.max = String(max);
    }
    this._input.step = String(step ?? 1);
    this._input.value = String(value);
    this._input.addEventListener('input', () => {
      const typed = this._input.value.trim();
      const reason =
        typed === '' ? undefined : outOfBounds(Number(typed), bounds);
      label.textContent = reason ?? '';
      label.hidden = !reason;
    });
    this.node.appendChild(this._input);
  }

  getValue(): number {
    return this._input.value ? Number(this._input.value) : Number.NaN;
  }

  private _input: HTMLInputElement;
}

/** Ask for the workers of a site: the answer as typed, never changed. */
export async function askWorkers(
  title: string,
  value: number,
  refusal: string | undefined,
  bounds: ICountBounds | null
): Promise<IScaleAnswer> {
  const result = await showDialog({
    title,
    body: new WorkersBody(value, refusal, bounds),
    buttons: [Dialog.cancelButton(), Dialog.okButton()],
    focusNodeSelector: 'input'
  });
  return { accept: result.button.accept, value: result.value };
}

import { LabIcon } from '@jupyterlab/ui-components';

import leptonSvg from '../style/icons/lepton.svg';

/** The Lepton icon of the sidebar tab and the panel header. */
export const leptonIcon = new LabIcon({
  name: 'lepton-lab:lepton',
  svgstr: leptonSvg
});

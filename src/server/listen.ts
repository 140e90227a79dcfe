/** Listen failures as one line naming the address and the flag (in src/util, so src/ca's bundle endpoint shares it). */
export { ListenError, formatHostPort, listenError } from '../util/listen.js';
